"""Async jobs and batches: requests queued now, run later through the same pipeline.

    POST /v1/jobs, POST /v1/batches        (api/jobs.py, api/batches.py)
      → JobQueue.submit                    (queue_sqlite.py | queue_redis.py: durable)
      → Workers claim under a lease        (worker.py; in the sidecar or `llm-sidecar worker`)
      → execute: pipeline.run/finish       (execute.py: routes, limits, budgets, cache, ...)
      → settle (fenced by the lease), retry with backoff, or dead-letter
      → webhook (webhooks.py, signed) and batch output files (batches.py)

Execution is at least once; result writes are fenced by the claim's lease, so a job that
ran twice (its worker was presumed dead) still has exactly one result.
"""
