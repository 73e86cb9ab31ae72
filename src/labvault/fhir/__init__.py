"""The FHIR R4 API under ``/fhir/R4``: OAuth2 client-credentials tokens for service clients,
SMART-style scopes, read and search of patients, appointments, sites and results, and the
creation of results by laboratory systems that push FHIR.

A request needs both a scope of its token (what the client was allowed to ask for) and a
grant of the access policy for its kind of client (``service:lis``/``service:fhir``), and it
reaches only the patients in care at the sites the client serves. Everything goes through
the same repositories as the rest of the application, so the policy, the scope and the audit
apply unchanged.
"""
