"""Web faces: admin JSON API (/api/v1), health probes, dashboard, tracked-link redirect."""
