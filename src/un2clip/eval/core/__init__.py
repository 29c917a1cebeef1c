"""What every evaluation shares: embedding images and texts (``embed``), metrics as pure functions of
score matrices (``metrics``), result files and the merged report (``report``)."""
