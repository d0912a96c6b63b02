"""The top floor: a ConvertRequest through a straight line of timed stages (run.py), handing typed
results to each other (state.py). It imports everything below it; nothing below imports it."""
