"""The control plane, on top of everything: the controller actor, the schema of every
table, the local cluster's lifecycle."""
