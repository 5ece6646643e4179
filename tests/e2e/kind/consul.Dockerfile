# Consul for the kind suite, from the Consul this project builds
# (build/tools.sh consul): no registry needed.
FROM scratch
COPY tmp /tmp
COPY consul /usr/local/bin/consul
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/consul"]
