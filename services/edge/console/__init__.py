"""The web console at `/console`: static pages that call the public HTTP API from the browser."""
