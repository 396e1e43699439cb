"""Shadow trials: prove a cheaper model good enough on live traffic before a route moves.

A route's `shadow:` names candidate models, a sample rate and a daily spend limit. The
request's way through it:

    run: the answer is metered → `sample` draws; a sampled answer is captured as it leaves
    proxy: the answer's last byte is out, its books written → `trial.launch`
    trial (a task of its own, bounded per route): reserve against the day's limit → call
      each candidate as a JSON request → compare with the primary (compare.py) → record:
      the result row in the state store (results.py), metrics, and the spend — its own
      usage rows, with the ledger's `shadow` lever counting it against the saving
    `GET /shadow` (ops port) and `llm-sidecar shadow` read the rows back: sample size,
    agreement with a Wilson interval, validity, latency, cost, the projected saving.

The app's answer, headers and latency are never touched, and a shadow call goes through no
admission: it never counts against the app's limits or budgets.
"""
