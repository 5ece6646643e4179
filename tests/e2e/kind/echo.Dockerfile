# The kind suite's workload image: e2e-echo (tests/cmd/e2e-echo), static.
FROM scratch
COPY e2e-echo /e2e-echo
ENTRYPOINT ["/e2e-echo"]
