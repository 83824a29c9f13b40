# What ExitStackInstrumentor patches, in the form opentelemetry-instrumentation expects: FastAPI's
# request stacks (pyproject's fastapi extra has the same floor). BaseInstrumentor checks it before
# instrumenting; without FastAPI, opentelemetry-instrument leaves the instrumentor out, and plain
# Starlette apps need none (ExitStackMiddleware reads the global providers itself).
_instruments = ("fastapi >= 0.133",)
_supports_metrics = True
