"""`python -m cortexstream.server`: see main.py for the options."""

from .main import main

main()
