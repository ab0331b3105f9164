"""Stand-in model files: the exact file names, formats and input/output signatures of real models,
with generated weights, for tests and demos on machines without the real downloads. They are
generated on demand from a seed and never shipped."""
