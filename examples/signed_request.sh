#!/usr/bin/env bash
# Send one signed request to a licensed model with curl.
#
#   CIDSERVE_PRIVATE_KEY=0x... examples/signed_request.sh URL IMAGE [CONTENT_TYPE]
#
#   URL           the predict URL, e.g. 'http://127.0.0.1:8000/api/models/<model_id>/predict?top_k=3'
#   IMAGE         the image file sent as the request body
#   CONTENT_TYPE  default image/jpeg
#
# The key is read by `cidserve sign` from CIDSERVE_PRIVATE_KEY (or CIDSERVE_KEYSTORE +
# CIDSERVE_KEYSTORE_PASSWORD), never from the command line. Each signature is good for one
# request: run the script again for the next one. Set CIDSERVE to the cidserve command if it
# is not on PATH (e.g. CIDSERVE=.venv/bin/cidserve).
set -euo pipefail

url=${1:?usage: $0 URL IMAGE [CONTENT_TYPE]}
image=${2:?usage: $0 URL IMAGE [CONTENT_TYPE]}
content_type=${3:-image/jpeg}

# The signature covers the URL's host, the Content-Type and the body: curl must send exactly
# these. `--format curl` prints "-H" and "Name: value" on alternate lines: one array element each.
mapfile -t signature < <("${CIDSERVE:-cidserve}" sign POST "$url" \
  -H "Content-Type: ${content_type}" --data-file "$image" --format curl)
if [ "${#signature[@]}" -ne 10 ]; then
  echo "signed_request.sh: cidserve sign failed" >&2
  exit 1
fi

exec curl -sS -X POST "$url" \
  -H "Content-Type: ${content_type}" \
  "${signature[@]}" \
  --data-binary @"$image"
