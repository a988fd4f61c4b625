"""One module per `lmforge` command: `lmforge <name>` runs `lmforge.commands.<name>:main`.

Each module is thin: it reads the command line (through `config`), calls into the packages that
do the work, and prints what the user asked for. `cli.py` maps names to these modules.
"""
