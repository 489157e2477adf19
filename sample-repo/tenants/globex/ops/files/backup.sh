#!/bin/sh
set -eu
echo "backing up to $BUCKET"
