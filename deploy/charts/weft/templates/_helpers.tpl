{{/* weft.image NAME: the reference of one of Weft's images. */}}
{{- define "weft.image" -}}
{{ .root.Values.image.registry }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* weft.labels: the labels every object carries. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/part-of: weft
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
weft.io/control-plane-ns: {{ .Release.Namespace }}
{{- end -}}

{{/* weft.required NAME VALUE: fails the render with a message that says what to set. */}}
{{- define "weft.required" -}}
{{- if not .value -}}
{{- fail (printf "%s is empty: weft install fills it (or pass --set-file %s=FILE to helm)" .name .name) -}}
{{- end -}}
{{- .value -}}
{{- end -}}
