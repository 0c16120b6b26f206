"""`python -m agent.service`: the resident service process (the client starts it)."""

from agent.service.server import main

main()
