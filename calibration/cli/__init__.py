"""Command-line subcommands of the calibration layer, loaded lazily by the ``optisim`` group (``optisim.cli``)."""
