"""Images in, model inputs out: preprocessing records, calibration/validation data, the synthetic sample,
and where the installed data (targets/, calibration/) is."""
