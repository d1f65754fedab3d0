# Sourced by the Dockerfile's RUN steps: use the build secret `pip_cert` as pip's
# CA bundle when one was given (TLS-intercepting proxies), else the system bundle.
if [ -s /run/secrets/pip_cert ]; then
    export PIP_CERT=/run/secrets/pip_cert
fi
