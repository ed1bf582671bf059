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

{{/* The entry named .name among .values.secretEnv and .values.extraEnv, as YAML ("{}": none). */}}
{{- define "piggywatch.findEnv" -}}
{{- $found := dict -}}
{{- range $env := concat .values.secretEnv .values.extraEnv -}}
{{- if eq (get $env "name") $.name -}}
{{- $found = $env -}}
{{- end -}}
{{- end -}}
{{- toYaml $found -}}
{{- end -}}

{{/*
piggywatch.checkReplicas: fails the render when replicaCount > 1 cannot work. The replicas
elect a leader through the shared PostgreSQL state, so `state:` in config must be a
postgresql:// URL. What the chart cannot see is trusted: a ${VAR} reference (a URL with a
password comes from a Secret), or a PIGGYWATCH_STATE variable (it overrides `state:`) that is
read from a Secret or a valueFrom. The SQLite state volume is useless then, and a
ReadWriteOnce claim would keep replicas on other nodes from starting: persistence must be off.
Keys that may be missing are read with get, so that `helm lint --strict` passes.
*/}}
{{- define "piggywatch.checkReplicas" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if gt $replicas 1 -}}
{{- $config := fromYaml .Values.config -}}
{{- $state := get $config "state" -}}
{{- if not (kindIs "string" $state) -}}
{{- $state = "" -}}
{{- end -}}
{{- $override := include "piggywatch.findEnv" (dict "values" .Values "name" "PIGGYWATCH_STATE") | fromYaml -}}
{{- if get $override "name" -}}
{{- $state = get $override "value" | default "${PIGGYWATCH_STATE}" | toString -}}
{{- end -}}
{{- if not (or (regexMatch "^postgres(ql)?://" $state) (contains "${" $state)) -}}
{{- $found := ternary "not set (SQLite by default)" (printf "a %s: URL" (splitList ":" $state | first)) (eq $state "") -}}
{{- fail (printf "piggywatch: replicaCount %d needs a shared PostgreSQL state database, but `state:` in config is %s. Set it to a postgresql:// URL, e.g. `state: ${STATE_DATABASE_URL}` with STATE_DATABASE_URL in secretEnv (see examples/ha-values.yaml), or set replicaCount=1." $replicas $found) -}}
{{- end -}}
{{- if .Values.persistence.enabled -}}
{{- fail (printf "piggywatch: replicaCount %d keeps the state in PostgreSQL, and replicas on different nodes cannot share the SQLite state volume: set persistence.enabled=false." $replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The URL the other replicas reach this one's API at: the pod IP (POD_IP, from the
downward API) and the container port; https when the config sets server.tls. */}}
{{- define "piggywatch.advertiseUrl" -}}
{{- $config := fromYaml .Values.config -}}
{{- $server := get $config "server" -}}
{{- $tls := false -}}
{{- if kindIs "map" $server -}}
{{- $tls = not (empty (get $server "tls")) -}}
{{- end -}}
{{- printf "%s://$(POD_IP):%d" (ternary "https" "http" $tls) (int .Values.containerPort) -}}
{{- end -}}

{{/* "true" when the user sets the advertise URL: ha.advertise_url in config, or
PIGGYWATCH_HA__ADVERTISE_URL in secretEnv / extraEnv. */}}
{{- define "piggywatch.advertiseUrlGiven" -}}
{{- $config := fromYaml .Values.config -}}
{{- $ha := get $config "ha" -}}
{{- $env := include "piggywatch.findEnv" (dict "values" .Values "name" "PIGGYWATCH_HA__ADVERTISE_URL") | fromYaml -}}
{{- $given := get $env "name" -}}
{{- if kindIs "map" $ha -}}
{{- $given = or $given (get $ha "advertise_url") -}}
{{- end -}}
{{- if $given -}}
true
{{- end -}}
{{- end -}}
