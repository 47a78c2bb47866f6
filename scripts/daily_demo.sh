#!/bin/sh
# Daily retraining, two days (`make demo-daily`): the synthetic logs are generated once as dated
# folders into $SOURCE, then delivered one day at a time into $DATA/events, with a pipeline run
# after each delivery. The second run ingests only day 2 and warm-starts from day 1's models.
set -eu
CLI=${CLI:-.venv/bin/ctr-pipeline}
SOURCE=${SOURCE:-data/daily-source}
DATA=${DATA:-data/daily}
USERS=${USERS:-800}
EVENTS=${EVENTS:-40}
DAYS=2  # sessions that run past the last midnight make a short third folder: it is not delivered

if [ ! -d "$SOURCE/events" ]; then
  "$CLI" generate-data --output "$SOURCE" --dated-folders --days "$DAYS" --users "$USERS" --events-per-user "$EVENTS"
fi
mkdir -p "$DATA/events"
cp "$SOURCE/items.csv" "$SOURCE/users.csv" "$DATA/"
for day in $(ls "$SOURCE/events" | head -n "$DAYS"); do
  if [ -d "$DATA/events/$day" ]; then
    echo "== $day was delivered before"
    continue
  fi
  echo "== delivering $day"
  cp -r "$SOURCE/events/$day" "$DATA/events/$day"
  "$CLI" run --config configs/daily.yaml
done
