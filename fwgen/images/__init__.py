"""Image writers, one module per format, each written from a `RootFS` model.

Every writer is deterministic (fixed timestamps, model order, owners from the model) and
puts its output in place atomically with fwgen.files.replacing (a temporary file in the same
folder, then os.replace).
"""
