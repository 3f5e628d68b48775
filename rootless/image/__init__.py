"""Images: the store, references, layers, import/export of archives, pull/push, garbage collection, inspect."""
