#!/bin/sh
# The demo client: asks the web service by its name once a second and prints who answered.
while true; do
    answer=$(timeout 3 wget -q -O - "${TARGET:-http://web:8080/}" 2>&1) || answer="no answer"
    echo "$(date +%T) $answer"
    sleep 1
done
