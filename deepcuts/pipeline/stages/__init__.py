"""The cached stages of a run, one module each, so each key's code digest covers only what that
stage can run: dense fine-tune, teacher outputs, rewind point, scores."""
