"""Run the edge: `python -m services.edge`."""

from services.edge.main import main

main()
