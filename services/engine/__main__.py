"""Run the engine: `python -m services.engine`."""

from services.engine.main import main

main()
