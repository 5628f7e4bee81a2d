"""The watch cache: a member's bookings as one MadeBookings read found them
(`watchcache:{uid}`, for one interval), and the member's POSTs per UTC day (`cap:{uid}:{day}`)."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.core.store.connection import Part

LISTED = "_listed"
"""Field of a member's watch cache that says its MadeBookings read is done (booking ids are
digits, so it cannot collide)."""


class Watch(Part):
    """What a member's list said this interval; how many POSTs the member had today."""

    def cache_bookings(self, user_id: str, bookings: dict[int, str], ttl: float) -> None:
        """A member's bookings as read by one MadeBookings call, shared for one interval. The
        `LISTED` field says the read is done, even when it found nothing."""
        key = self.keys.watchcache(user_id)
        pipe = self.r.pipeline(transaction=not self.conn.cluster)
        pipe.delete(key)
        pipe.hset(key, mapping={LISTED: "1", **{str(k): v for k, v in bookings.items()}})
        pipe.pexpire(key, max(1, int(ttl * 1000)))
        pipe.execute()

    def forget_cached(self, user_id: str, booking_id: int) -> None:
        """After we changed a booking (confirm), its next read goes upstream."""
        self.r.hdel(self.keys.watchcache(user_id), str(booking_id))

    def cached_booking(self, user_id: str, booking_id: int) -> tuple[bool, str | None]:
        """(whether the member's list has been read this interval, the booking as listed)."""
        listed, value = self.r.hmget(self.keys.watchcache(user_id), [LISTED, str(booking_id)])
        return listed is not None, str(value) if value is not None else None

    def _member_day(self, user_id: str, now: float) -> str:
        return self.keys.member_day(user_id, datetime.fromtimestamp(now, UTC).strftime("%Y%m%d"))

    def member_posts_today(self, user_id: str, now: float) -> int:
        """Rebook POSTs sent for the member this UTC day (REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY)."""
        return int(self.r.get(self._member_day(user_id, now)) or 0)

    def take_member_post(self, user_id: str, cap: int, now: float) -> bool:
        """Counts one POST of the member today, atomically; False (nothing counted) past `cap`."""
        key = self._member_day(user_id, now)
        pipe = self.r.pipeline(transaction=not self.conn.cluster)
        pipe.incr(key)
        pipe.expire(key, 2 * 86400)
        count = int(pipe.execute()[0])
        if count > cap:
            self.r.decr(key)
            return False
        return True

    def give_back_member_post(self, user_id: str, now: float) -> None:
        """A counted POST that did not go out after all."""
        self.r.decr(self._member_day(user_id, now))
