"""What one `/metrics` scrape costs, against collecting the same metrics for `/stats`.

A scrape runs on a worker thread, but it is Python holding the GIL the request loop also
needs, so its CPU time is what the requests share. Series are made the way requests make
them (the request path's instruments), for a small deployment and a large one: routes x
models x statuses attribute sets, each with the duration, time-to-first-chunk and two token
histograms and a request counter. Prints CPU ms per scrape and the ratio to `/stats`.

    .venv/bin/python bench/scrape.py
"""

from __future__ import annotations

import time

from sidecar.telemetry.recorder import Telemetry


def telemetry(routes: int, models: int, statuses: tuple[int, ...]) -> Telemetry:
    tel = Telemetry({"K8S_POD_NAME": "checkout-7d9f6b-xk2p4", "K8S_NAMESPACE_NAME": "shop"})
    for r in range(routes):
        for m in range(models):
            for status in statuses:
                attrs = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": f"route{r}",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.response.model": f"upstream-model-{m}",
                    "sidecar.route": f"route{r}",
                    "sidecar.model": f"model{m}",
                    "http.response.status_code": status,
                }
                tel.duration.record(0.3, attrs)
                tel.ttfc.record(0.1, attrs)
                tel.requests.add(1, attrs)
                for kind in ("input", "output"):
                    tel.tokens.record(100, {**attrs, "gen_ai.token.type": kind})
    return tel


def cpu_ms(run: object, n: int) -> float:
    began = time.process_time()
    for _ in range(n):
        run()  # type: ignore[operator]
    return (time.process_time() - began) / n * 1000


def main() -> None:
    for label, shape in (
        ("small: 4 routes x 2 models x 2 statuses", (4, 2, (200, 502))),
        ("large: 20 routes x 3 models x 3 statuses", (20, 3, (200, 429, 502))),
    ):
        tel = telemetry(*shape)  # type: ignore[arg-type]
        body, _ = tel.scrape("")  # loads the exporter once
        n = 20
        scrape = cpu_ms(lambda tel=tel: tel.scrape(""), n)
        stats = cpu_ms(tel.stats, n)
        lines = body.count(b"\n")
        print(
            f"{label}: {lines} lines, {len(body) // 1024} KiB; "
            f"scrape {scrape:.1f} ms CPU, /stats {stats:.1f} ms ({scrape / stats:.0f}x)"
        )
        tel.shutdown()


if __name__ == "__main__":
    main()
