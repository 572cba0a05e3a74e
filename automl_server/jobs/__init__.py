"""Jobs: the state machine, the stages and the Celery tasks that run them."""
