"""Atlas Cloud's published sample flow for minimax/hailuo-2.3/i2v-standard, as a script.

Upload a picture, start the generation, poll the prediction until it is done, download
the video. Written the way Atlas's sample code is (plain HTTP calls, a polling loop), so
it runs unchanged against the real API or the local simulator:

    ATLASCLOUD_API_KEY=...  python examples/atlas_sample.py out.mp4            # real API
    python -m i2v.simulator.server --port 8765 &
    ATLASCLOUD_BASE_URL=http://127.0.0.1:8765 ATLASCLOUD_API_KEY=any \
        python examples/atlas_sample.py out.mp4                                 # simulator

Env: ATLASCLOUD_API_KEY (required), ATLASCLOUD_BASE_URL, ATLAS_SAMPLE_IMAGE,
ATLAS_SAMPLE_PROMPT, ATLAS_SAMPLE_POLL_S (default 3), ATLAS_SAMPLE_TIMEOUT_S (900).
Each run against the real API is billed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

BASE_URL = os.environ.get("ATLASCLOUD_BASE_URL", "https://api.atlascloud.ai").rstrip("/")
API_KEY = os.environ.get("ATLASCLOUD_API_KEY", "")
IMAGE = Path(os.environ.get("ATLAS_SAMPLE_IMAGE", Path(__file__).with_name("rocket.jpg")))
PROMPT = os.environ.get(
    "ATLAS_SAMPLE_PROMPT",
    "The camera pans right slowly as the rocket lifts off, smoke billowing below",
)
POLL_S = float(os.environ.get("ATLAS_SAMPLE_POLL_S", "3"))
TIMEOUT_S = float(os.environ.get("ATLAS_SAMPLE_TIMEOUT_S", "900"))


def main() -> int:
    if not API_KEY:
        print("set ATLASCLOUD_API_KEY", file=sys.stderr)
        return 2
    output = Path(sys.argv[1] if len(sys.argv) > 1 else "hailuo_output.mp4")
    headers = {"Authorization": f"Bearer {API_KEY}"}

    # Step 1: upload the picture; the model reads it from the returned URL.
    with IMAGE.open("rb") as f:
        upload_response = httpx.post(
            f"{BASE_URL}/api/v1/model/uploadMedia",
            headers=headers,
            files={"file": (IMAGE.name, f, "image/jpeg")},
            timeout=60,
        )
    upload_response.raise_for_status()
    image_url = upload_response.json()["data"]["download_url"]
    print("Uploaded:", image_url)

    # Step 2: start the video generation.
    data = {
        "model": "minimax/hailuo-2.3/i2v-standard",
        "image": image_url,
        "prompt": PROMPT,
        "duration": 6,
        "enable_prompt_expansion": False,
    }
    generate_response = httpx.post(
        f"{BASE_URL}/api/v1/model/generateVideo",
        headers={**headers, "Content-Type": "application/json"},
        json=data,
        timeout=60,
    )
    generate_response.raise_for_status()
    generate_result = generate_response.json()
    # Atlas's samples show the id under "data"; some answers carry it at the top level.
    prediction_id = (generate_result.get("data") or generate_result)["id"]
    print("Prediction:", prediction_id)

    # Step 3: poll for the result.
    poll_url = f"{BASE_URL}/api/v1/model/prediction/{prediction_id}"
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        response = httpx.get(poll_url, headers=headers, timeout=30)
        if response.status_code == 200:
            result = response.json()["data"]
            status = result["status"]
            if status in ("completed", "succeeded"):
                outputs = result["outputs"]
                video_url = outputs if isinstance(outputs, str) else outputs[0]
                print("Generated video:", video_url)
                break
            if status == "failed":
                print("Generation failed:", result.get("error"), file=sys.stderr)
                return 1
            print("Status:", status)
        elif response.status_code in (401, 402, 403):
            print("Poll refused:", response.status_code, response.text, file=sys.stderr)
            return 1
        else:
            # Right after creation the id may not be visible yet; 5xx are transient.
            print("Poll answered HTTP", response.status_code)
        if time.monotonic() > deadline:
            print("Gave up waiting; the prediction may still finish.", file=sys.stderr)
            return 1
        time.sleep(POLL_S)

    # Step 4: download the video.
    with httpx.stream("GET", video_url, timeout=120, follow_redirects=True) as download:
        download.raise_for_status()
        with output.open("wb") as out:
            for chunk in download.iter_bytes():
                out.write(chunk)
    print("Saved:", output, output.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
