"""Stand-ins for hardware this machine does not have (an Android phone): the device only, never
the orchestration code around it."""
