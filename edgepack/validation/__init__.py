"""Local validation: a bundle against its source model on the runtimes devices use, streamed, with
metrics, a report, and the model comparison behind `edgepack reproduce`."""
