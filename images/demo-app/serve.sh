#!/bin/sh
# The demo web service: answers every request with its greeting and the node it runs on.
mkdir -p /www
echo "${GREETING:-hello} from $(hostname)" > /www/index.html
exec httpd -f -p 8080 -h /www
