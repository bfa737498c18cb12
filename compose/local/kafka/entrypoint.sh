#!/bin/sh
# Start one KRaft broker+controller configured by the environment, as the apache/kafka image is:
# every KAFKA_FOO_BAR (but the JVM's KAFKA_HEAP_OPTS / KAFKA_OPTS) becomes `foo.bar` in
# server.properties; CLUSTER_ID formats an empty log dir once.
set -eu
conf=/etc/kafka/server.properties
: "${CLUSTER_ID:?CLUSTER_ID is required (22 base64url characters, the same on every broker)}"
env | sort | while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS | KAFKA_OPTS) ;;
    KAFKA_*) printf '%s=%s\n' "$(printf '%s' "${name#KAFKA_}" | tr 'A-Z_' 'a-z.')" "$value" ;;
  esac
done >"$conf"
set -f # the class path's `*` is the JVM's wildcard, not the shell's
java="java -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -cp /opt/kafka/libs/*"
# --ignore-formatted: a restarted broker keeps its data.
# shellcheck disable=SC2086
$java kafka.tools.StorageTool format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$conf"
# shellcheck disable=SC2086
exec $java ${KAFKA_HEAP_OPTS:-} ${KAFKA_OPTS:-} kafka.Kafka "$conf"
