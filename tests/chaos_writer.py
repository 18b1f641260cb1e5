"""A writer process for the chaos suite: a steady stream of single-row transactions.

python tests/chaos_writer.py URL SEED OPS POSTS... -- TAGS... -- READER
"""

from __future__ import annotations

import random
import sys
import time

import psycopg


def main() -> None:
    url, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rest = sys.argv[4:]
    first = rest.index("--")
    second = rest.index("--", first + 1)
    posts = [int(x) for x in rest[:first]]
    tags = [int(x) for x in rest[first + 1 : second]]
    reader = int(rest[second + 1])
    rng = random.Random(seed)
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while done < ops:
            post, tag = rng.choice(posts), rng.choice(tags)
            roll = rng.random()
            if roll < 0.5:
                conn.execute(
                    "INSERT INTO blog_comment (post_id, author_id, body) VALUES (%s, %s, %s)",
                    [post, reader, f"chaos {seed}.{done}"],
                )
            elif roll < 0.8:
                conn.execute(
                    "INSERT INTO blog_posttag (post_id, tag_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [post, tag],
                )
            else:
                conn.execute(
                    "DELETE FROM blog_posttag WHERE post_id = %s AND tag_id = %s", [post, tag]
                )
            done += 1
            time.sleep(rng.uniform(0, 0.004))


if __name__ == "__main__":
    main()
