"""Control API: FastAPI app served by Hypercorn inside the daemon's trio loop."""
