"""Training: submit and resume checks, the queue and scheduler, the worker actors, the
trainer loop."""
