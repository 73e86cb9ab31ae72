"""Web building blocks shared by every feature: headers, problems, request context, templates."""
