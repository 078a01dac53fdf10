"""What a command does beyond parsing and printing: measure, fill a space, calibrate, validate, time,
rank, report. Jobs use the store, the profilers, estimation and the search cost; the CLI calls them."""
