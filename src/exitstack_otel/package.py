# What ExitStackInstrumentor instruments, in the form opentelemetry-instrumentation expects.
_instruments = ("starlette >= 0.40",)
_supports_metrics = True
