"""``python -m optisim`` runs the ``optisim`` command line."""

from optisim.cli import main

main(prog_name="optisim")
