{{/*
The chart name, or nameOverride. Cut to 63 characters: Kubernetes names and label values
(DNS-1123 labels) may not be longer.
*/}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: <release>-<chart name>, or the release name alone when
it already contains the chart name, or fullnameOverride. Cut to 63 characters for the same reason
as above; suffixed names (the Redis ones) cut it further.
*/}}
{{- define "gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The namespace of every namespaced resource. */}}
{{- define "gateway.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the gateway pods: the small, stable subset. Never change them: selectors are
immutable, so a change breaks upgrades. The component label keeps the gateway's selectors from
matching the chart's Redis pod.
*/}}
{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Labels shared by every resource (no component). */}}
{{- define "gateway.commonLabels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "gateway.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the gateway's resources: the selector labels plus the common ones. */}}
{{- define "gateway.labels" -}}
{{ include "gateway.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Name of the ServiceAccount the gateway pods run as. */}}
{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The gateway image reference: the digest wins over the tag; the tag defaults to appVersion. */}}
{{- define "gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Name of the Secret the pods read: existingSecret, or the chart's own. */}}
{{- define "gateway.secretName" -}}
{{- default (include "gateway.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Name of the chart's Redis StatefulSet and headless Service. */}}
{{- define "gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "gateway.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the chart's Redis pod. */}}
{{- define "gateway.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* Labels of the chart's Redis resources. */}}
{{- define "gateway.redis.labels" -}}
{{ include "gateway.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/* Whether the chart's Redis requires a password: "true" or "". */}}
{{- define "gateway.redis.authEnabled" -}}
{{- if and .Values.redis.deploy .Values.redis.auth.enabled }}true{{ end }}
{{- end }}

{{/* Name of the chart's cache-only Redis Deployment and Service. */}}
{{- define "gateway.redisCache.fullname" -}}
{{- printf "%s-redis-cache" (include "gateway.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the chart's cache Redis pod (its own component: no selector overlap). */}}
{{- define "gateway.redisCache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis-cache
{{- end }}

{{/* Labels of the chart's cache Redis resources. */}}
{{- define "gateway.redisCache.labels" -}}
{{ include "gateway.commonLabels" . }}
app.kubernetes.io/component: redis-cache
{{- end }}

{{/* Whether the chart's cache Redis requires a password: "true" or "". */}}
{{- define "gateway.redisCache.authEnabled" -}}
{{- if and .Values.redisCache.deploy .Values.redisCache.auth.enabled }}true{{ end }}
{{- end }}

{{/* Whether the gateway may reach a Redis outside the chart (quota or cache): "true" or "". */}}
{{- define "gateway.externalRedis" -}}
{{- if or (not .Values.redis.deploy) .Values.redisCache.url }}true{{ end }}
{{- end }}

{{/*
The gateway's server settings, read from the `config` block with the gateway's own defaults: the
port the container listens on, and the shutdown grace in whole seconds. values.schema.json makes
both numbers (not ${VAR} strings), since the chart derives the pod spec from them.
*/}}
{{- define "gateway.port" -}}
{{- $server := .Values.config.server | default dict }}
{{- $server.port | default 8080 | int }}
{{- end }}

{{/* The separate metrics port (config.metrics.port), or "" when /metrics is on the API port. */}}
{{- define "gateway.metricsPort" -}}
{{- $metrics := .Values.config.metrics | default dict }}
{{- if and (ne (toString $metrics.enabled) "false") (not (kindIs "invalid" $metrics.port)) }}
{{- $metrics.port | int }}
{{- end }}
{{- end }}

{{- define "gateway.shutdownGraceSeconds" -}}
{{- $server := .Values.config.server | default dict }}
{{- $server.shutdown_grace_seconds | default 30 | float64 | ceil | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep plus the gateway's shutdown grace must fit in
it, or the kubelet kills streams the gateway is still finishing. Default: both plus 15 seconds.
*/}}
{{- define "gateway.terminationGracePeriodSeconds" -}}
{{- $grace := include "gateway.shutdownGraceSeconds" . | int }}
{{- $preStop := .Values.preStopSleepSeconds | int }}
{{- $needed := add $grace $preStop }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 15 }}
{{- else }}
{{- $explicit := .Values.terminationGracePeriodSeconds | int }}
{{- if le $explicit $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds (%d) + config.server.shutdown_grace_seconds (%d) = %d, or the kubelet kills requests the gateway is still finishing; raise it or leave it empty for %d" $explicit $preStop $grace $needed (add $needed 15)) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/*
Fetch a value from the chart's Secret as it exists in the cluster (empty offline, in
`helm template`), so generated secrets survive upgrades. Call with (list $ "KEY").
*/}}
{{- define "gateway.existingSecretValue" -}}
{{- $ctx := index . 0 }}
{{- $key := index . 1 }}
{{- $secret := lookup "v1" "Secret" (include "gateway.namespace" $ctx) (include "gateway.fullname" $ctx) }}
{{- if and $secret $secret.data }}
{{- index $secret.data $key | default "" | b64dec }}
{{- end }}
{{- end }}

{{/* Checks that span several values; included by the Deployment so they run on every render. */}}
{{- define "gateway.validate" -}}
{{- if and .Values.redis.deploy .Values.redis.url }}
{{- fail "set redis.url (an existing Redis) or redis.deploy (the chart's own Redis), not both" }}
{{- end }}
{{- if and .Values.redisCache.deploy .Values.redisCache.url }}
{{- fail "set redisCache.url (an existing cache Redis) or redisCache.deploy (the chart's own), not both" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (.Values.autoscaling.maxReplicas | int) (.Values.autoscaling.minReplicas | int)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}
