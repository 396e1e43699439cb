"""The request pipeline. The order of the stages is written once, in `run`."""
