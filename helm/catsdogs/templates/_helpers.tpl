{{/* Chart name, overridable. */}}
{{- define "catsdogs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full object name: RELEASE-NAME, or RELEASE when it already contains the name. */}}
{{- define "catsdogs.fullname" -}}
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

{{- define "catsdogs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the serving pods: stable across upgrades (a Deployment's selector is
immutable). The component keeps the helm test pod out of the Service and the PDB. */}}
{{- define "catsdogs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "catsdogs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: inference
{{- end }}

{{/* Labels every object carries besides name/instance/component. */}}
{{- define "catsdogs.commonLabels" -}}
helm.sh/chart: {{ include "catsdogs.chart" . }}
app.kubernetes.io/version: {{ include "catsdogs.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: catsdogs
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Standard labels on every serving object. */}}
{{- define "catsdogs.labels" -}}
{{ include "catsdogs.selectorLabels" . }}
{{ include "catsdogs.commonLabels" . }}
{{- end }}

{{- define "catsdogs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "catsdogs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "catsdogs.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "catsdogs.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "catsdogs.imageTag" .) }}
{{- end }}

{{/* Environment of the serving container: BENTOML_HOME, the drain file (preStop), the service's settings (`config`, names
as read by catsdogs.settings.ServingSettings; null or "" leaves the service's default), then `env`. */}}
{{- define "catsdogs.env" -}}
{{- $names := dict
  "modelTag" "CATSDOGS_BENTO_MODEL"
  "maxBatchSize" "CATSDOGS_MAX_BATCH_SIZE"
  "maxLatencyMs" "CATSDOGS_MAX_LATENCY_MS"
  "maxUploadBytes" "CATSDOGS_MAX_UPLOAD_BYTES"
  "torchThreads" "CATSDOGS_TORCH_THREADS"
  "decodeThreads" "CATSDOGS_DECODE_THREADS"
  "device" "CATSDOGS_DEVICE"
  "runtime" "CATSDOGS_RUNTIME" }}
{{- $env := dict "BENTOML_HOME" .Values.scratch.bentomlHome "CATSDOGS_DRAIN_FILE" .Values.drain.file }}
{{- range $key, $value := .Values.config }}
{{- if kindIs "float64" $value }}{{ $value = int64 $value }}{{ end }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{- $_ := set $env (get $names $key) (toString $value) }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.env }}{{ $_ := set $env $k (toString $v) }}{{ end }}
{{- range $k := keys $env | sortAlpha }}
- name: {{ $k }}
  value: {{ get $env $k | quote }}
{{- end }}
{{- end }}

{{/* The pictures claim the serving pods mount (values.yaml `pictures`): the existing one when
named, else the chart's own, RELEASE-catsdogs-pictures (catsdogs-pictures for the release
`catsdogs`: the stage pods' default CATSDOGS_K8S_PICTURES_CLAIM). */}}
{{- define "catsdogs.picturesClaim" -}}
{{- default (printf "%s-pictures" (include "catsdogs.fullname" .) | trunc 63 | trimSuffix "-") (.Values.pictures | default dict).existingClaim }}
{{- end }}
