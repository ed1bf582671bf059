{{/*
Helpers shared by the standalone templates and by piggywatch.sidecar. They read only
.Values and .Release, so an app chart can call them with
(dict "Values" .Values.piggywatch "Release" .Release), and name resources the way this
chart does when it is installed as the app chart's "piggywatch" dependency.
*/}}

{{- define "piggywatch.name" -}}
{{- default "piggywatch" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "piggywatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "piggywatch.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "piggywatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "piggywatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "piggywatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "piggywatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image; an empty tag means the chart's appVersion (given only in this chart). */}}
{{- define "piggywatch.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if and (not $tag) (hasKey . "Chart") -}}
{{- $tag = .Chart.AppVersion -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository (required "piggywatch: set image.tag" $tag) -}}
{{- end -}}

{{- define "piggywatch.stateClaimName" -}}
{{- default (printf "%s-state" (include "piggywatch.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* A pod annotation that changes with the config, so pods restart to read it (subPath
mounts do not see ConfigMap updates). */}}
{{- define "piggywatch.configChecksum" -}}
checksum/piggywatch-config: {{ toYaml (dict "config" .Values.config "rules" .Values.rules) | sha256sum }}
{{- end -}}
