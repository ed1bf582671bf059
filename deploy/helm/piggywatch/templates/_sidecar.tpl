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
