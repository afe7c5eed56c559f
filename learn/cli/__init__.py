"""Command-line subcommands of the learning layer, loaded lazily by the ``optisim`` group (``optisim.cli``)."""
