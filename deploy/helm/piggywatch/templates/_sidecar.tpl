{{/*
piggywatch.sidecar: the PiggyWatch container, for a pod's `containers:` list. The
standalone Deployment uses it too, so both ways of running it are the same container.

In an app chart that has this chart as its "piggywatch" dependency (mode: sidecar, so
only the ConfigMaps are created), add to the app's pod template:

  containers:
    - name: app
      ...
    {{- include "piggywatch.sidecar" (dict "Values" .Values.piggywatch "Release" .Release) | nindent 4 }}
  volumes:
    {{- include "piggywatch.volumes" (dict "Values" .Values.piggywatch "Release" .Release) | nindent 4 }}

The app's Service can then expose port 9790 for Prometheus. See examples/.

High availability works the same way in sidecar mode: each of the app's replicas runs one
PiggyWatch, and with a postgresql:// `state` they share one state database, elect one leader
(the others stand by, serve /metrics and forward API calls to it at its pod IP, see
PIGGYWATCH_HA__ADVERTISE_URL below). With a SQLite state, keep the app at one replica.
*/}}
{{- define "piggywatch.sidecar" -}}
- name: piggywatch
  image: {{ include "piggywatch.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run", "--config", "/etc/piggywatch/piggywatch.yaml"]
  ports:
    - name: piggywatch
      containerPort: {{ .Values.containerPort }}
      protocol: TCP
  env:
    # With several replicas (or app pods, for a sidecar), the standbys forward API calls to
    # the leader at the URL it advertises: its pod IP. POD_IP comes first, so that
    # $(POD_IP) expands in what follows.
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    {{- if not (include "piggywatch.advertiseUrlGiven" .) }}
    - name: PIGGYWATCH_HA__ADVERTISE_URL
      value: {{ include "piggywatch.advertiseUrl" . | quote }}
    {{- end }}
    {{- range $ref := .Values.secretEnv }}
    - name: {{ $ref.name }}
      valueFrom:
        secretKeyRef:
          name: {{ default $.Values.existingSecret $ref.secretName }}
          key: {{ $ref.key }}
          optional: {{ default false $ref.optional }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: piggywatch
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: piggywatch
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: piggywatch-config
      mountPath: /etc/piggywatch/piggywatch.yaml
      subPath: piggywatch.yaml
      readOnly: true
    - name: piggywatch-rules
      mountPath: /etc/piggywatch/rules
      readOnly: true
    - name: piggywatch-state
      mountPath: /var/lib/piggywatch
    - name: piggywatch-tmp
      mountPath: /tmp
{{- end -}}

{{/* piggywatch.volumes: the volumes piggywatch.sidecar mounts, for the pod's `volumes:`. */}}
{{- define "piggywatch.volumes" -}}
- name: piggywatch-config
  configMap:
    name: {{ include "piggywatch.fullname" . }}-config
- name: piggywatch-rules
  configMap:
    name: {{ include "piggywatch.fullname" . }}-rules
- name: piggywatch-state
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "piggywatch.stateClaimName" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: piggywatch-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}
