"""The sweep as steps: preflight, find or create, classify, create runs, queue; chained evaluation, resume, cancel.

May import: spec, tracking, backends, results, job, and the foundation (errors, workspace); never cli.
"""
