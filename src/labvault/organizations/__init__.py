"""Organizations (tenants: a lab group) and their sites."""
