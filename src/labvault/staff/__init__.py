"""Laboratory staff members, their roles and sites."""
