"""Run records: the one vocabulary of tags and statuses, the run-store interface, one module per transport
(MLflow client, stdlib sqlite, REST) and the one chooser between them.

May import: the foundation (errors, workspace) only.
"""
